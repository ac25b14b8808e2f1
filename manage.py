#!/usr/bin/env python
"""Django's command-line utility for ragloop."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    from django.core.management import execute_from_command_line

    from knowledge.audit_context import audit_context_cli_set

    # What a command does is recorded in the audit log as "cli:<os user>" (web requests that
    # runserver serves set their own actor).
    audit_context_cli_set()

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
