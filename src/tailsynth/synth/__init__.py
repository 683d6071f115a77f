"""The generation runner: plan -> batched, seeded, resumable, sharded execution."""
