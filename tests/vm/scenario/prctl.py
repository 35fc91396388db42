"""Calls prctl(PR_SET_MM, PR_SET_MM_MAP, NULL, 0) (the kernel refuses it:
no map given; warrant's watch sees the attempt on entry) and prints the
result. argv[1]: "native" (the x86-64 syscall, through libc) or "int80"
(the 32-bit entry, `int $0x80`, which any x86-64 process may use and which
the syscalls:sys_enter_prctl tracepoint never sees)."""

import ctypes
import mmap
import sys

PR_SET_MM, PR_SET_MM_MAP = 35, 14
mode = sys.argv[1]
if mode == "native":
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.prctl(PR_SET_MM, PR_SET_MM_MAP, 0, 0, 0)
    print(f"prctl native -> {result} errno {ctypes.get_errno()}")
elif mode == "int80":
    code = bytes(
        [0x53]  # push rbx (callee-saved)
        + [0xB8, 172, 0, 0, 0]  # mov eax, 172 (prctl in the i386 table)
        + [0xBB, PR_SET_MM, 0, 0, 0]  # mov ebx, PR_SET_MM
        + [0xB9, PR_SET_MM_MAP, 0, 0, 0]  # mov ecx, PR_SET_MM_MAP
        + [0x31, 0xD2, 0x31, 0xF6, 0x31, 0xFF]  # xor edx, esi, edi
        + [0xCD, 0x80]  # int 0x80
        + [0x5B, 0xC3]  # pop rbx; ret
    )
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    result = ctypes.CFUNCTYPE(ctypes.c_int)(address)()
    print(f"prctl int80 -> {result}")
else:
    sys.exit(f"unknown mode {mode}")
