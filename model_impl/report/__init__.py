"""The report a person reads to decide: the checks run live (:mod:`.characterize`), the
committed results loaded (:mod:`.results`), and one module per section of findings.md."""
