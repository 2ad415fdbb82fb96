"""Simulators shipped as a product feature: Mercado Pago cloud, cash register, USB devices."""
