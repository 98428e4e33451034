from setuptools import find_packages, setup

setup(
    name="daomirror",
    version="0.1.0",
    description="A pull-through cache (mirror) for Docker and OCI container registries, on Twisted.",
    long_description=open("README.rst").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    install_requires=[
        "twisted[tls]>=23.10",
        "treq>=23.11",
        "klein>=23.5",
        "zope.interface>=6.0",
        "pyOpenSSL>=23.0",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-twisted>=1.14", "pytest-timeout>=2.2"],
    },
)
