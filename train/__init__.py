"""Training: the paper's ImageNet and CIFAR recipes, plus a digits recipe that runs on any laptop.

Entry points: ``python -m train.imagenet``, ``python -m train.cifar``, ``python -m train.evaluate``,
``python -m train.plot``, ``python -m train.analyze responses``. Imports only ``resnet`` and libraries.
"""
