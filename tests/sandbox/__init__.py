"""Tests of the sandbox XNAT (`service/xnat_sandbox`), and of real XNAT clients against it."""
