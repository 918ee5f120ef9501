"""ferrum-mlx: the `mlx` backend (Apple MLX; Metal on Apple silicon, MLX CPU elsewhere)."""
