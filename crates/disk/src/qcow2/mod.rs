//! qcow2 (v2 and v3): header, L1/L2 tables, refcounts, compressed clusters, backing chains, snapshots.
