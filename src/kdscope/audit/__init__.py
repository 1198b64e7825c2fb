"""``kdscope audit``: from "I distilled a model" to "here is what moved", in one command.

- :mod:`~kdscope.audit.runs`: :func:`audit_config` and :func:`audit_runs`, the study (distilled,
  control and random-control students per seed) trained and analysed by the study machinery.
- :mod:`~kdscope.audit.logits`: :func:`audit_logits`, the output-side audit of saved predictions
  from any framework (``.npy``, ``.pt``, ``.safetensors``; :mod:`~kdscope.audit.files`).
- :mod:`~kdscope.audit.output`: every audit writes ``DIR/report.html`` and ``DIR/audit.json``.
"""

from kdscope.audit.logits import audit_logits
from kdscope.audit.output import AuditResult
from kdscope.audit.runs import audit_config, audit_runs

__all__ = ["AuditResult", "audit_config", "audit_logits", "audit_runs"]
