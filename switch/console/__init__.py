"""The QA console's static files (``static/``), served by ``switch.admin_console``."""
