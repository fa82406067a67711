"""specdec_t5x: exact speculative decoding for T5 / T5X in one jitted loop."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.4.30",
    "flax>=0.8",
    "optax>=0.2",
    "numpy>=1.24",
    "gin-config>=0.5",
    "tqdm>=4.60",
    # T5X checkpoints (flax brings them too; named because checkpoints.py imports them).
    "orbax-checkpoint",
    "tensorstore",
    "etils[epath]",
]

EXTRAS = {
    # Real data: TFDS builder, seqio tasks, sentencepiece vocabulary, BLEU/ROUGE.
    "data": [
        "tensorflow-cpu",
        "tensorflow-datasets",
        "tensorflow-text",
        "seqio>=0.0.18",
        "sentencepiece",
        "sacrebleu>=2",
        "rouge-score",
        # TFDS imports it but declares it only for Python < 3.9 (tensorflow/datasets#11212).
        "importlib_resources",
    ],
    # Sweeps and plots.
    "bench": ["matplotlib>=3.7", "scipy>=1.10"],
    # Tests and the Hugging Face peer. torch is pinned to the CPU build so that an
    # unpinned resolution does not pull a multi-GB CUDA wheel.
    "hf": ["torch==2.13.0", "transformers>=4.40", "safetensors"],
    "test": ["pytest>=7", "hypothesis>=6", "scipy>=1.10", "ruff"],
}
EXTRAS["all"] = sorted({dep for deps in EXTRAS.values() for dep in deps})

setup(
    name="specdec_t5x",
    version="0.1.0",
    description="Exact speculative decoding (Leviathan et al. 2023) for T5 / T5X in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["specdec_t5x", "specdec_t5x.*"]),
    # The row-product kernel is compiled on first use, for the machine it runs on.
    package_data={"specdec_t5x.network": ["cpu_products.cc"]},
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
