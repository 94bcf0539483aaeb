"""Hand-written layers: functional ``*_forward`` / ``*_backward`` pairs and thin Modules around them."""
