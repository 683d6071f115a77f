"""Fusion (Elberg et al.): tail samples fused with head neighbours in a sparse latent feature space.

The generator's VAE latents (:mod:`.latents`) are mapped into a simplicial embedding learned with
Iterated Learning (:mod:`.embedding`); EigenCAM maps of a classifier on that embedding (:mod:`.cams`)
say which positions carry the class; a tail sample keeps its salient positions and takes the rest
from a K-nearest head neighbour (:mod:`.fuse`); the fused embedding is decoded to a latent and
refined by the last few steps of a DDIM schedule (:mod:`.refine`).
"""
