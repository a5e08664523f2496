"""Local sandbox VMs: systemd-booting podman containers reached over real SSH."""
