# `make packages`: the Debian packages immune-common, immune-hive and immune-agent in dist/
# (packaging/build-debs.sh; needs dpkg-dev, python3-venv, and clang, llvm, libbpf-dev,
# bpftool for the prebuilt BPF object).
.PHONY: packages
packages:
	packaging/build-debs.sh dist
