"""The networks: U²-NetP (rembg's graph rebuilt in Keras, pretrained weights imported) and a U-Net."""
