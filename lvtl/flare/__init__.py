"""NVFlare glue: the server workflow, the site task and the metrics-only result filter.

Everything that computes lives in the rest of :mod:`lvtl`; this package only moves the signed
model and the protocol out to the sites and the metrics back.
"""
