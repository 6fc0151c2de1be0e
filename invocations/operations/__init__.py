"""Operations: every write the dashboard makes to Restate (cancel, kill, pause,
resume, restart, purge, attach, bulk jobs), each as a service that calls Restate,
records an audit row and announces the change after commit. Same layer as reads."""
