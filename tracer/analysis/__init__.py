"""Pure analysis over decoded events: drops, Service flows, overlay, MTU, softirq, attribution, journeys. No BCC, lab
or I/O (tests/unit/test_import_boundary.py)."""
