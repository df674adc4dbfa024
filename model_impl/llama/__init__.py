"""The model side: config, weight forms (float and in-graph int4), the Llama, its graphs.

Data flows ``config -> linears -> weights -> representations -> model -> graphs``; nothing
here knows about compilers or runners.
"""
