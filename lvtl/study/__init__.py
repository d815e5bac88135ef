"""The transfer-learning study: protocol, arms, typed results and the cross-site report."""

from lvtl._exports import lazy

__getattr__, __dir__, __all__ = lazy(__name__, {
    "protocol": "Arm EvalGrid Protocol",
    "run": "run_study",
    "results": "SiteResults ResultsDoc Run SCHEMA",
    "report": "write_report merge_results",
})
