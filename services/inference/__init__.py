"""Standalone inference services: a Tornado HTTP shim in front of ZMQ REQ/REP detector workers.

Programs: ``cnet-inference-yolo`` (:mod:`services.inference.yolo_service`) and
``cnet-inference-opencv`` (:mod:`services.inference.opencv_service`). Nothing here imports ``cnet``.
"""
