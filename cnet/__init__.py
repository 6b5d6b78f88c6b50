"""CNET agent: resource register, scheduler, workload manager, executors, REST API and CLI."""

__version__ = "0.1.0"
