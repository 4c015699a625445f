"""``python -m mfa_service`` is the ``mfa-service`` command."""

import sys

from mfa_service.cli import main

sys.exit(main())
