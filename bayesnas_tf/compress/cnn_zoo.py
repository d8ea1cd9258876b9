"""Ordinary CNNs that `--mode=compress` trains from scratch (ALGORITHM.md 7).

Both are plain Keras functional chains of Conv2D / Dense / BatchNormalization
/ pooling layers, the only structure the compressor needs, so a user's own
`.keras` model of the same layer kinds is handled by the same code.
"""

from __future__ import annotations

from typing import Sequence

import keras

from bayesnas_tf.errors import ConfigError

# LeNet-5-Caffe, the variant of the Bayesian-compression literature
# (Louizos et al. 2017): 20@5x5 -> pool -> 50@5x5 -> pool -> 500 -> 10.
# On 28x28x1 MNIST: 520 + 25,050 + 400,500 + 5,010 = 431,080 parameters.
LENET5_PARAMS_MNIST = 431_080

# The VGG-like CIFAR network: conv widths per block ("M" = 2x2 max pool),
# each conv followed by BN and ReLU, then a hidden dense layer.
VGG_BLOCKS = (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, "M")
VGG_HIDDEN = 512


def lenet5(input_shape: Sequence[int], num_classes: int,
           name: str = "lenet5") -> keras.Model:
  if len(input_shape) != 3:
    raise ValueError(f"lenet5 needs (H, W, C) images; received {tuple(input_shape)}")
  inputs = keras.Input(tuple(input_shape), name="images")
  x = keras.layers.Conv2D(20, 5, activation="relu", name="conv1")(inputs)
  x = keras.layers.MaxPooling2D(2, name="pool1")(x)
  x = keras.layers.Conv2D(50, 5, activation="relu", name="conv2")(x)
  x = keras.layers.MaxPooling2D(2, name="pool2")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(500, activation="relu", name="dense1")(x)
  outputs = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, outputs, name=name)


def vgg_like(input_shape: Sequence[int], num_classes: int, width: float = 1.0,
             name: str = "vgg") -> keras.Model:
  """VGG-style CNN with BN; `width` scales every conv and the hidden layer."""
  if len(input_shape) != 3:
    raise ValueError(f"vgg_like needs (H, W, C) images; received {tuple(input_shape)}")
  if not width > 0:
    raise ValueError(f"width must be > 0; received {width!r}")
  scaled = lambda units: max(1, int(round(units * width)))
  inputs = keras.Input(tuple(input_shape), name="images")
  x = inputs
  conv_index = pool_index = 0
  for block in VGG_BLOCKS:
    if block == "M":
      pool_index += 1
      x = keras.layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
      continue
    conv_index += 1
    x = keras.layers.Conv2D(scaled(block), 3, padding="same", use_bias=False,
                            name=f"conv{conv_index}")(x)
    x = keras.layers.BatchNormalization(name=f"bn{conv_index}")(x)
    x = keras.layers.ReLU(name=f"relu{conv_index}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(scaled(VGG_HIDDEN), name="dense1")(x)
  x = keras.layers.BatchNormalization(name="bn_dense1")(x)
  x = keras.layers.ReLU(name="relu_dense1")(x)
  outputs = keras.layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, outputs, name=name)


ARCHITECTURES = {"lenet5": lenet5, "vgg": vgg_like}
# The smallest image each can take: LeNet-5's two valid 5x5 convs and two
# pools, VGG's four pools.
MIN_IMAGE_SIZE = {"lenet5": 16, "vgg": 16}


def build_architecture(architecture: str, input_shape: Sequence[int],
                       num_classes: int, vgg_width: float = 1.0) -> keras.Model:
  if architecture not in ARCHITECTURES:
    raise ConfigError(f"unknown architecture {architecture!r}; valid: "
                     f"{', '.join(ARCHITECTURES)}")
  smallest = min(int(input_shape[0]), int(input_shape[1]))
  if smallest < MIN_IMAGE_SIZE[architecture]:
    raise ConfigError(
        f"--architecture={architecture} needs images of at least {MIN_IMAGE_SIZE[architecture]}x"
        f"{MIN_IMAGE_SIZE[architecture]}; the dataset has {input_shape[0]}x{input_shape[1]}; pass a --base_model that fits them")
  if architecture == "vgg":
    return vgg_like(input_shape, num_classes, vgg_width)
  return lenet5(input_shape, num_classes)
