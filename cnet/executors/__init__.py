"""Executors: how each workload type is started, watched, stopped and cleaned up."""
