from blockbuster import hookimpl


@hookimpl
def register_segmenters(register):
    register("blur", "blockbuster_blur:BlurThreshold", aliases=("blur-threshold",),
             description="gaussian blur, fixed threshold, connected components")
