"""What the worker serves over HTTP: health, metrics, table views routed to the owning worker, the operator console; and the deadline-bound HTTP caller the services use."""
