"""twistd plugin: ``twistd restmq [options]`` runs the RestMQ broker."""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _RestMQServiceMaker:
    tapname = "restmq"
    description = "RestMQ: a message broker over HTTP/JSON that keeps its queues in Redis"

    @property
    def options(self):
        # Imported late so that `twistd --help` stays fast and never fails on our imports.
        from restmq.runtime.options import Options

        return Options

    def makeService(self, options):
        from restmq.runtime.service import make_service

        return make_service(options)


serviceMaker = _RestMQServiceMaker()
