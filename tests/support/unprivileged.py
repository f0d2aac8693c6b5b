"""Running a command as a user without root: nobody, who may still read the checkout.

A clone under /root (mode 700, as on a fresh machine) is out of nobody's reach, so a plain uid change would test
"cannot read the code" instead of "not root". CAP_DAC_READ_SEARCH, kept as an ambient capability, lets the process
read files and nothing more: it cannot load BPF, mount, or touch a network namespace, and its uid is not 0.
"""

from __future__ import annotations

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
