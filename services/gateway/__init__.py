"""The read-only S3 gateway (`cnet-gateway-data`): serves stored data objects as one S3 bucket.

A separate program the agent launches; it knows nothing of ``cnet``. Its only contract with the
agent is the directory layout and the ``data_objects`` table (see ``index.py``).
"""
