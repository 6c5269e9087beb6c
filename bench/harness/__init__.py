"""The benchmark harness behind `python bench/run.py` (issue 13).

Only `product` imports xnatdrop; every other module reaches the product through it, so moving
xnatdrop's modules (issue 10: `pipeline/`, the sandbox as `xnat_sandbox`) changes one file here.
"""
