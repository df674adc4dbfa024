"""The lab: experiments that measure the route (the fusion matrix, the linear chain, IREE
with weights as globals) and the timers, bytes and rooflines they and the benchmarks share."""
