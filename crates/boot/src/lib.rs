//! Boot virtual machines in QEMU from ISOs, disks or the network and detect when they booted.
