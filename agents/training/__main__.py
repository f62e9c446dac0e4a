"""``python -m medseg_agents.training``: the ``medseg-train`` command."""

from .cli import main

raise SystemExit(main())
