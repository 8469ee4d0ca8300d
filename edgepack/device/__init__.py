"""The device side of edgepack: what runs on, or stands in for, the target device.

Host measurement (measure.py), the operator-count latency estimate (estimate.py, references.py, opcount.py), SSH
benchmarks on a real device (remote.py, sshurl.py), and emulated devices: emulation.py prepares one (qemu-user + an
arm64 Debian userland + the device's own runtime wheels + a device /proc/cpuinfo + the instruction-counting plugin
built from insn_count.c), run_emulated.py runs a bundle's run.py inside it, cpi.py turns instruction counts into
device milliseconds fitted on the profile's published references. The build stage that uses them is
edgepack.stages.device.
"""
