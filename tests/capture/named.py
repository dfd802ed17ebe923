"""`python named.py NAME MODULE [ARGS...]`: run ``python -m MODULE ARGS`` as a process named NAME.

The kernel's name of a process (comm, /proc/PID/comm, what eBPF's bpf_get_current_comm sees) is set
with prctl(PR_SET_NAME) before the module runs; threads started later inherit it.
"""

import ctypes
import os
import runpy
import sys

PR_SET_NAME = 15

if __name__ == "__main__":
    name, module, *rest = sys.argv[1:]
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    sys.argv = [module, *rest]
    sys.path[0] = os.getcwd()  # as `python -m` does: modules resolve from the working directory
    runpy.run_module(module, run_name="__main__", alter_sys=True)
