"""What the mirror means, computed as it changes and stored for the pages: the
deadlocks in the wait-for graph. Reads the mirror, uses the pure graph layer,
writes its own derived tables and tells pages through `invocations.events`.
Driven by the sync loop's `after_step`, never by a page view."""
