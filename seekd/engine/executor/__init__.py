"""The executor side of the engine: setting up each rank's ModelRunner and the tensor-parallel
worker processes that rank 0 drives. The runner never imports it; the engine core does."""
