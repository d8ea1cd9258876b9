"""TensorFlow building blocks shared by every network of the package.

What lives here: PyTorch-equivalent batch norm (batch_norm.py), the faster
convolution kernels (fast_conv.py), initializers and small layer helpers
(init.py), the base of ops that are a chain of layers (sequence_op.py),
activation recomputation (recompute.py), the fused momentum SGD
(fused_sgd.py), BN moving-statistics re-estimation (bn_statistics.py), the
squared-coefficient rules of the diagonal Hessian back-propagation
(diag_rules.py) and the accelerator probe (devices.py).

What it may import: TensorFlow, Keras, NumPy and `bayesnas_tf.errors`;
nothing else of ours. Every other package may import it.
"""

# The package of every `keras.saving.register_keras_serializable` call: the
# registered names are "bayesnas_tf>ClassName" (what .keras files store).
PACKAGE = "bayesnas_tf"
