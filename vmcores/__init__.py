"""Real arm64 vmcores for mminspect's tests: fetch a kernel, boot it under QEMU,
record ground truth inside the guest, and dump the paused guest (see README.md)."""
