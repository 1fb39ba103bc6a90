"""Running TrainingJobs on this machine: `trainforge run` (`runner`) and the local backend's
per-job supervisor (`supervisor`), both on the same trainer code path as a cluster attempt."""
