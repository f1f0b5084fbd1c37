"""dgan: a distributed, asynchronous discriminator GAN for remote-sensing segmentation."""

__version__ = "0.1.0"
