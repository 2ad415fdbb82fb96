"""pointd: take card payments on Mercado Pago Point terminals at a checkout, safely."""

__version__ = "0.1.0"
