#!/usr/bin/env python
"""Write the tiny random-weight FLUX checkpoint (diffusers layout) and its tiny LoRAs to OUTDIR."""

import argparse

from flux_vector.tiny import build_tiny_flux

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("outdir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {build_tiny_flux(args.outdir, seed=args.seed)}")
