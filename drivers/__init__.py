"""Device drivers: the Photonica device protocol over serial and TCP.

Issue 4 builds them here. They may import `protocol`, and start the simulator
for a ``sim://`` URL; nothing above them.
"""
