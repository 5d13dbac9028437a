"""mminspect's benchmark (issue 7): synthetic arm64 kernels at server scale,
timed stage by stage against the cost of merely reading their table pages.
Run ``python -m bench --help``; see bench/README.md."""
