"""NVFlare glue: the server workflow, the site executor, the metrics-only result filter, the
job, and the startup kits' policy (:mod:`lvtl.flare.provision`).

Everything that computes lives in the rest of :mod:`lvtl`; this package only moves the signed
model and the protocol out to the sites and the metrics back.
"""
