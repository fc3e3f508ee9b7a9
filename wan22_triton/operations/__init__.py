"""Operations: watchdog, metrics, structured events, per-component limits, locks, client abandonment."""
