"""The Photonica device simulator: physics in numpy, the device protocol on the wire.

Issue 3 builds it here. It imports only `protocol`, never `actors`, `hal` or
`drivers`.
"""
