from .build import build_discriminator, build_generator, count_params

__all__ = ["build_generator", "build_discriminator", "count_params"]
