"""Multi-view datasets: loaders for Blender, instant-ngp, COLMAP and NeuS/DTU, and the procedural default scene."""
