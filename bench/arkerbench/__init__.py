"""Arker's end-to-end benchmarks (run them with `scripts/bench`).

Every figure is measured through the SDK against a real `arker serve` on
this machine, next to floors measured in the same run: the raw btrfs
snapshot ioctl, a bare `subprocess.run(["true"])` and an HTTP round trip to
the same server's no-op endpoint.
"""
